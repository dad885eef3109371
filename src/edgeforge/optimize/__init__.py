"""Making a model fit its limits: layer-wise sensitivity (`sensitivity`) and, later, the search
over passes and recipes. Each module keeps its own public names; import them from there."""
