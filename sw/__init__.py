"""ternopu software: compiler (model -> HBM image + instruction program), runtime backends, CLI."""
