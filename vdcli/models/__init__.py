"""Networks. Each file is one model, readable alone; none of them knows about training or sampling."""
