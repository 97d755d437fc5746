"""Tests of nso_sim (a package so its module names cannot clash with other test folders)."""
