"""perfkit's Hydra configs (shipped inside the package as ``perfkit.configs``)."""
