"""Training, the paper's Algorithm 1 (:mod:`.trainer`), on the shared resumable driver
(:mod:`.driver`, :mod:`.state`) that distillation uses too."""
