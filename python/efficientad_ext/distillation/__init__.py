"""Teacher distillation, the paper's Algorithm 3 (:mod:`.distiller`), with the pretrained
feature extractors Psi (:mod:`.extractors`)."""
