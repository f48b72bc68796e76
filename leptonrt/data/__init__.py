"""Datasets: turning a spec string (``digits``, ``mnist:DIR``, ``npz:PATH``,
``synthetic:N,D,C``) into normalised train/test arrays (:mod:`leptonrt.data.loaders`, which
reads only regular files, :mod:`leptonrt.data.files`), and keeping them in shared memory
within a byte budget (:mod:`leptonrt.data.cache`, :mod:`leptonrt.data.shm`)."""
