"""The app's blueprints, one module per part of the site."""
