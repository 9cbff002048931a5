"""The subject network (issue 17): links between hit groups, seen by the coordinator."""
