"""Words for generated needle keys: common English adjectives and nouns, fixed in the package.

RULER draws its word keys as ``adjective-noun`` pairs from wonderwords' lists; these lists play that
part without a dependency. Their order is part of every generated needle set: append, never reorder.
"""

from __future__ import annotations

ADJECTIVES = tuple("""
able absent abundant accurate active actual adorable afraid aggressive agreeable alert alive amazing ancient
angry annual anxious aquatic arctic ashamed awake aware awesome awful bad bald basic beautiful bent best better
big bitter black blue bold bored boring brave bright brief brilliant broad broken brown busy calm capable careful
careless cautious certain charming cheap cheerful chemical chief clean clear clever close cloudy clumsy cold
colorful comfortable common complete complex confident cool correct cozy crazy creative crisp crooked crowded
cruel cuddly curious curly curved cute damp dangerous dark dear deep delicate delightful dense different
difficult dirty distant dizzy dry dull dusty eager early easy elastic electric elegant empty energetic enormous
entire equal exact excited expensive extra fair faithful famous fancy fast fearless fierce fine flat fluffy
foolish formal fragile free fresh friendly frozen funny fuzzy gentle giant gifted glad glass gloomy golden good
graceful grand great green grumpy guilty handsome happy hard harsh healthy heavy helpful hidden high hollow
honest hot huge humble hungry icy ideal idle immense important innocent jealous jolly juicy keen kind large late
lazy lean light little lively local lonely long loose loud lovely low loyal lucky magic major mellow merry mighty
mild minor misty modern moist narrow nasty natural neat nervous new nice noble noisy normal odd old open orange
ordinary pale patient perfect pink plain pleasant polite poor popular precious pretty proud purple quick quiet
rapid rare raw ready real red rich right rough round royal rude rural sad safe salty scarce secret serious sharp
shiny short shy silent silky silly simple slim slow small smart smooth soft solid sour spicy splendid square
steady steep sticky stormy strange strict strong sturdy sunny super sweet swift tall tame tender thick thin
thirsty tidy tiny tough tricky true ugly unique upset urban useful vast velvet violet vivid warm wary weak wealthy
weary wet white whole wicked wide wild wise witty wooden yellow young zany zealous
""".split())

NOUNS = tuple("""
actor airport alarm album anchor angle animal ankle answer apple apron arch arm army arrow artist attic aunt
avenue baby badge bag bakery balloon banana band bank barn basket bath battery beach bean bear bed bee bell belt
bench berry bicycle bird blanket boat bone book boot bottle bowl box branch bread brick bridge brother brush
bubble bucket bus butter button cabin cake camera camp candle canoe canvas cap captain car card carpet carrot
castle cat cave ceiling chair chalk cheese cherry chest chicken chimney circle city clock cloud coast coat coffee
coin comet compass cookie copper corner cottage cotton cousin cow crab crayon cup curtain cushion daisy dance
desert desk diamond dinner doctor dog doll dolphin door dragon drawer dream drum duck eagle earth egg elbow
engine envelope eraser fabric factory falcon farm feather fence field finger fire fish flag flame flower flute
fog forest fork fountain fox frog garden gate ghost giraffe glove goat gold grape grass guitar hammer harbor hat
hawk helmet hill honey horse hotel house island jacket jar jelly jewel judge jungle kettle key kitchen kite
kitten ladder lake lamp lantern leaf lemon letter library lion lizard lock magnet mango map marble market meadow
mirror monkey moon mountain mouse museum needle nest newspaper night notebook ocean office onion orchard
otter owl oyster paint palace pancake paper parrot pebble pencil penguin pepper piano picture pillow pilot pine
planet plate pocket pond potato puzzle queen rabbit radio rain ribbon river road robot rocket roof rose sailor
salad sand school scissors sea shadow shell ship shoe silver sister sky snail snow soap sock spoon squirrel
star station stone storm street sugar summer sun swan table teacher teapot tent thunder tiger toast tomato tower
town toy tractor train tree truck tulip tunnel turtle umbrella valley vase village violin wagon wall wallet
watch water whale wheel window winter wolf worm yacht zebra
""".split())
