"""Runs several ``llm-course`` commands in one process: ``python ddp_stages.py COMMANDS.json``.

Under DDP, Lightning launches the other ranks once, for the first command, by re-running this script; the later
commands find the process group in place. The stages still run as the CLI runs them, but the processes start (and
import torch, Lightning and transformers) once instead of once per command.
"""

import json
import sys

from llm_course.cli import main

if __name__ == "__main__":
    for argv in json.loads(open(sys.argv[1]).read()):
        main(argv)
