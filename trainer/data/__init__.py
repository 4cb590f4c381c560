"""The data: from the user's files to the batches a step trains on, one concern a module.

    sources    data_path (a file, a dir, a glob) in its format (text, csv, jsonl, parquet, hf), as
               documents streamed in segments, with one error line for a bad file
    tokenize   the segments tokenized on every core, in order, into a flat file of ids
    cache      that file cached, keyed by the source, written once (a lock) and atomically
    corpus     the cached ids memory-mapped and split 90/10, with vocabulary compaction
    batches    random training windows and the fixed eval windows
"""
