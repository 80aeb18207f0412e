"""PaChorus: partner-aware chorus head animation (model, data, training, evaluation, inference)."""
