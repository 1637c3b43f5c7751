"""amlx: learned attributors and faithfulness evaluation for text classifiers."""

__version__ = "0.1.0"
