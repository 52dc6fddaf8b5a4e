"""Reports: read run directories (and nothing else) into terminal summaries, pictures and the
measured blocks of pages."""
