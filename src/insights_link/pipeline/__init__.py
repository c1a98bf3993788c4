"""The export run: options (:mod:`.options`), planning (:mod:`.plan`), the Beam graph
(:mod:`.graph`) and the run itself (:mod:`.run`)."""
