"""The experiments ``launch.py`` runs (``config.experiment``): each module has
``validate(cfg)`` and ``main(cfg, workdir)``; ``runner`` owns what they share."""
