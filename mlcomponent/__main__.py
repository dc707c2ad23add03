from mlcomponent.cli import main

main()
