"""The ``adapterhub`` command line. Each module registers thin commands that call one library function."""
