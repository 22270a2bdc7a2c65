"""The trained model as an artefact: what train writes to models/, what registry and serving load.

Everything here is fitted from training's outputs (the served Keras model, the hashtag
statistics, the rankers and their blend, the drift reference, the INT8 copy) or reads them back
(`predictor`); lifecycle and serving import it, training never does.
"""
