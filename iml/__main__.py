from iml.cli import main

main()
