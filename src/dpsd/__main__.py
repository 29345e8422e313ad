from dpsd.cli import main

main()
