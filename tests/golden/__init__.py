"""Golden exposition: a fixed multiprocess directory and the exact /metrics bytes it renders to."""
