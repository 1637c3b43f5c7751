"""Jobs behind explain.py subcommands (main, explain, evaluate)."""
