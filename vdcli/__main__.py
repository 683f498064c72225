from vdcli.cli import main

main()
