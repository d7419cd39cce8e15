"""The review station: a local web app to segment, inspect, reclassify and sign off cases
(``hemaseg serve``). :mod:`.db` stores, :mod:`.worker` segments in the background, :mod:`.app` serves."""
