"""The evidence study behind docs/results.md (``make report``): a study of the shapes world that
composes the library's pieces rather than being one of them.

* :mod:`.plan`: the steps (which Makefile stage with which variables) and where their runs go;
* :mod:`.makefile`: how a stage of the Makefile is called (the one definition of the pipeline's commands);
* :mod:`.results`: every saved results.json read once into typed values;
* :mod:`.stats`: the statistics (spread over seeds, standard errors, paired differences, speed-ups);
* :mod:`.plots`: the figures; :mod:`.report`: the prose and tables;
* :mod:`.cli`: ``python -m miro.shapes.study`` (what ``make report`` runs).
"""
