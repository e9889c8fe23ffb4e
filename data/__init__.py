"""Dataset layouts (PANDA, PatchCamelyon, IDC, lab folders), label files and
the synthetic slide generator."""
