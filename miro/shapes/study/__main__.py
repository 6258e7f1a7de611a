"""``python -m miro.shapes.study``: the evidence study (see :mod:`miro.shapes.study.cli`)."""

from miro.shapes.study.cli import main

raise SystemExit(main())
