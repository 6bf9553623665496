"""The relevance explorer: a web page, served by the service at /explorer, where product and
design partners see a fan's history beside their recommendations, ask why each creator was
recommended, edit the history and watch the list move (issue 15).

It is a room above serving: the page talks to the service only through its JSON API
(/what-if, /creators, /recommend, /compare, /versions), and the service mounts the room by
its entry point (`towerline.rooms`, explorer.room:mount) when its config names it, so serving
never imports it. Front-end libraries are npm packages pinned in explorer/web/package.json,
installed by `make`, and served from there: nothing is fetched from the internet at run time.
"""
