"""Statistics best computed where the raw events are: scores, drift, quality, rates."""
