"""``python -m llm_course.tour.stages COMMANDS.json``: several ``llm-course`` commands in one process, in order.

The tour's Module 5 runs ``fit`` and then ``test`` on 2 CPU processes this way: Lightning launches the second rank
once, for the first command, by re-running this module, and the later commands find the process group in place,
so the processes start (and import torch and Lightning) once instead of once per command.
"""

import json
import sys
from pathlib import Path

from llm_course.cli import main

if __name__ == "__main__":
    for argv in json.loads(Path(sys.argv[1]).read_text()):
        main(argv)
