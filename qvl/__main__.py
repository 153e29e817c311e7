from qvl.start import main

main()
