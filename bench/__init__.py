"""cifar-bench: time training the seed CIFAR-10 network on every CPU and GPU, and catch slowdowns.

The harness knows nothing about convolutions. The parent process uses only ``cifar_model``'s
framework-free parts (the training settings and their vocabularies, the data-source check);
every framework is imported in worker subprocesses, one per cell.
"""

__version__ = "0.1.0"
