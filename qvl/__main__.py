from qvl.cli import main

main()
