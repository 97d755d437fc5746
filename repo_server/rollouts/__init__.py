"""Fleet rollouts: a release assigned to many nodes and HA groups, driven wave by wave."""
