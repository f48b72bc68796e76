"""Datasets: turning a spec string (``digits``, ``mnist:DIR``, ``npz:PATH``,
``synthetic:N,D,C``) into normalised train/test arrays; see :mod:`leptonrt.data.loaders`."""
