from edgellm.cli.app import main

main()
