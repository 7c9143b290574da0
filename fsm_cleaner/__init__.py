"""fsm-cleaner: frees node disk by pruning Docker, with the node cordoned while it works."""
