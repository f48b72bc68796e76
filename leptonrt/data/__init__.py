"""Datasets: turning a spec string (``digits``, ``mnist:DIR``, ``npz:PATH``, ``csv:PATH``,
``parquet:PATH``, ``py:package.module:function``, ``synthetic:N,D,C``) into normalised
train/test arrays (:mod:`leptonrt.data.loaders`, with tables in :mod:`leptonrt.data.tables`,
the user's own code in :mod:`leptonrt.data.pyfunc`, and the checks all of them share in
:mod:`leptonrt.data.arrays`; files are read only when regular, :mod:`leptonrt.data.files`),
and keeping them in shared memory within a byte budget (:mod:`leptonrt.data.cache`,
:mod:`leptonrt.data.shm`); on a joined host, the agent's copy (:mod:`leptonrt.data.hostcache`),
filled from the head by the exchange in :mod:`leptonrt.data.transfer`, or each step's rows
sent by value, :mod:`leptonrt.data.stream`)."""
