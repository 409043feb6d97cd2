"""bertserve: a serving microservice for BERT-family text classifiers."""

__version__ = "0.1.0"
