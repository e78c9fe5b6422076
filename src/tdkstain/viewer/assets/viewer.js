/* tdkstain view: the H&E and the virtual IHC side by side, panning and zooming together.
 *
 * Settings come from the JSON in <script id="tdkstain-view" type="application/json"> (written by
 * tdkstain.viewer.build). Each pane is one OpenSeadragon viewer whose world is measured in microns:
 * a slide of W pixels at M um/px is placed at x = 0 with width W * M, so the same point of the tissue
 * has the same viewport coordinates in both panes, whatever each slide's resolution. Panning or
 * zooming one pane does the same to the other.
 *
 * Tiles are described inline (a Deep Zoom "Image" object, no request for the .dzi XML) and loaded
 * as images, so the page works opened from a folder (file://, where browsers refuse XHR) as well as
 * from a web server. The HER2 map of tdkstain score, when present, is a second, semi-transparent
 * image over the IHC pane, placed in microns the same way.
 */
(function () {
  "use strict";

  var settings = JSON.parse(document.getElementById("tdkstain-view").textContent);

  function deepZoom(pane) {
    return {
      Image: {
        xmlns: "http://schemas.microsoft.com/deepzoom/2008",
        Url: pane.tiles,
        Format: pane.format,
        Overlap: String(pane.overlap),
        TileSize: String(pane.tileSize),
        Size: { Width: String(pane.width), Height: String(pane.height) }
      }
    };
  }

  function sources(pane, withMap) {
    var list = [{ tileSource: deepZoom(pane), x: 0, y: 0, width: pane.worldWidth }];
    var map = settings.her2;
    if (map && withMap) {
      list.push({
        tileSource: { type: "legacy-image-pyramid", levels: [{ url: map.image, width: map.width, height: map.height }] },
        x: 0, y: 0, width: map.worldWidth, opacity: map.visible ? map.opacity : 0
      });
    }
    return list;
  }

  function makeViewer(id, pane, withMap) {
    return OpenSeadragon({
      id: id,
      prefixUrl: "openseadragon/images/",
      tileSources: sources(pane, withMap),
      drawer: "canvas",            // WebGL refuses tiles read from file:// (tainted); the 2D canvas draws them
      crossOriginPolicy: false,
      showNavigator: true,
      navigatorPosition: "BOTTOM_RIGHT",
      showRotationControl: false,
      visibilityRatio: 0.2,
      constrainDuringPan: false,
      maxZoomPixelRatio: 2,
      animationTime: 0.5,
      gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true }
    });
  }

  var he = makeViewer("pane-he", settings.he, false);
  var ihc = makeViewer("pane-ihc", settings.ihc, true);
  var linked = document.getElementById("link-views");

  // Both worlds are in microns, so a pan or zoom of one pane is the same call on the other: the
  // "pan" and "zoom" events (raised synchronously by the viewport, with the target and, for a zoom
  // about the pointer, the reference point) are replayed on the other pane, which then animates
  // alongside. "viewport-change" (every animation frame) is the safety net for what raises neither
  // (a resized pane): the other pane takes this one's current centre and zoom when they differ, and
  // its own viewport-change then finds them equal, so the panes never chase each other.
  var mirroring = false;
  function mirror(follower, move) {
    if (mirroring || (linked && !linked.checked) || !follower.world.getItemCount()) {
      return;
    }
    mirroring = true;
    try {
      move();
    } finally {
      mirroring = false;
    }
  }
  function follow(leader, follower) {
    leader.addHandler("pan", function (event) {
      mirror(follower, function () { follower.viewport.panTo(event.center, event.immediately); });
    });
    leader.addHandler("zoom", function (event) {
      mirror(follower, function () { follower.viewport.zoomTo(event.zoom, event.refPoint, event.immediately); });
    });
    leader.addHandler("viewport-change", function () {
      if (!leader.world.getItemCount()) {
        return;
      }
      var zoom = leader.viewport.getZoom(true);
      var centre = leader.viewport.getCenter(true);
      var otherZoom = follower.viewport.getZoom(true);
      var otherCentre = follower.viewport.getCenter(true);
      var slack = 1e-6 / zoom;  // a millionth of the visible width
      if (Math.abs(otherZoom - zoom) <= 1e-6 * zoom &&
          Math.abs(otherCentre.x - centre.x) <= slack && Math.abs(otherCentre.y - centre.y) <= slack) {
        return;
      }
      mirror(follower, function () {
        follower.viewport.zoomTo(zoom, null, true);
        follower.viewport.panTo(centre, true);
      });
    });
  }
  follow(he, ihc);
  follow(ihc, he);
  if (linked) {
    linked.addEventListener("change", function () {
      if (linked.checked) {
        ihc.viewport.zoomTo(he.viewport.getZoom(true), null, true);
        ihc.viewport.panTo(he.viewport.getCenter(true), true);
      }
    });
  }

  // The HER2 map over the IHC pane: shown or hidden, and how opaque.
  var toggle = document.getElementById("her2-toggle");
  var opacity = document.getElementById("her2-opacity");
  function applyMap() {
    var item = ihc.world.getItemAt(1);
    if (item) {
      item.setOpacity(toggle && toggle.checked ? Number(opacity ? opacity.value : 60) / 100 : 0);
    }
  }
  if (toggle) {
    toggle.addEventListener("change", applyMap);
  }
  // The checkbox decides from the start (a browser may restore it unticked on reload).
  ihc.addHandler("open", applyMap);
  if (opacity) {
    opacity.addEventListener("input", applyMap);
  }

  window.tdkstainView = { he: he, ihc: ihc, settings: settings, applyMap: applyMap };
})();
