"""What the bot, the workers and the trainer share: the JSON contract, settings, logging, Redis key
names, the models folder's layout and temperature scaling.

Import-light on purpose: nothing here imports TensorFlow, Pillow or a chat SDK (numpy only in
`core.calibration`), so the bot's slim image can use all of it.
"""
