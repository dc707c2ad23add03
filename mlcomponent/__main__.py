from mlcomponent.cli import main

main(prog_name="mlcomponent")
