from repo_server.cli import main

main()
