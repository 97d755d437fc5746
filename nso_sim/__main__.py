from nso_sim.commands import main

main()
