"""Research campaigns: strategies propose experiments, runners run them, statistics decide."""
