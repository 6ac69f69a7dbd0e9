"""``ctrflow preprocess``: the Apache Beam job raw files -> encoded TFRecords + schema, one module per job.

==================  ===========================================================================
``driver``          ``run_preprocess``: plan, run on the configured runner (or in passes), check, commit
``graph``           the Beam DAG: time cut points, train statistics, payload, encode, writers
``plan``            ``JobPlan`` (inputs, splits, specs, validator) and ``read_chunks`` (read + validate)
``coercion``        per-column coercion of raw values to canonical ones (as each encoding class says)
``validation``      row checks: good rows in canonical form, bad rows as quarantine records
``splits``          random / time / given split codes and time cut points
``statistics``      training-split statistics (counts, bottom-k samples, moments, users)
``payload``         schema + vocabularies + head users, built from statistics or frozen (``schema_from``)
``encode``          validated chunks -> tf.train.Example bytes -> gzip TFRecord members
``wire``            the tf.train.Example wire format, TFRecord framing and gzip members (numpy, no TF)
``storage``         shard / quarantine / schema / manifest files, temp output and atomic commit
``accounting``      rows in / written / quarantined per split, checks, the summary (``stats.json``)
==================  ===========================================================================

No step handles single rows: rows travel as numpy column chunks (list columns in their flat
form, values + offsets, straight into the encoders), and only small partials and references
to compressed shard members move between steps. No worker (nor the launcher) imports
TensorFlow. The job is deterministic: the same config gives byte-identical shards,
vocabularies and schema on every runner and worker count. See ``docs/preprocess.md``.
"""
