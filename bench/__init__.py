"""cifar-bench: time training the seed CIFAR-10 network on every CPU and GPU, and catch slowdowns.

The harness knows nothing about convolutions: it reaches the network only through
``cifar_model``'s public API, in worker subprocesses.
"""

__version__ = "0.1.0"
