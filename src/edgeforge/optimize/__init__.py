"""Making a model fit its limits: the search over passes and recipes (`search.optimize`) and
layer-wise sensitivity (`sensitivity`). Each module keeps its own public names; import them from
there."""
