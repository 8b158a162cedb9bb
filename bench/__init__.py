"""`make bench`: the gateway and Postfix side by side (``python -m bench.run``)."""
