from nso_sim.cli import main

main()
