from llm_course.cli import main

main()
