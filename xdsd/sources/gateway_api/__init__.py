"""The Gateway API from files (issue 21): one parser per kind, and the conversion of
what the objects mean into the Istio-shaped objects xdsd serves (``convert``)."""
