"""Channel-level tools over a model's dependency graph: which units are dead
(:mod:`.liveness`) and the physical removal of zero filters and channels (:mod:`.shrink`)."""
